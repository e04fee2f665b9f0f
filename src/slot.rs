//! Redis Cluster hash slots: which of the 16384 slots a key, or the first
//! key of a command, lives in (CRC16/XMODEM of the key's hash tag, as
//! Redis computes it). Used to send a command that has no key of its own
//! (`WAIT`) to the node that took the write before it. Pure logic; it must
//! not talk to Redis.

use redis::{Arg, Cmd};

/// Number of hash slots in a Redis Cluster.
const SLOTS: u16 = 16384;

/// The slot of `key`: only the part between the first `{` and the next `}`
/// counts when that part is not empty.
pub fn of_key(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS
}

/// The slot of a command's first key: `EVALSHA`/`EVAL`/`FCALL` name their
/// keys after the key count; other commands streamcar sends have their key
/// first. None when the command has no key.
pub fn of_command(cmd: &Cmd) -> Option<u16> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()??;
    let scripted = [
        &b"EVALSHA"[..],
        b"EVAL",
        b"FCALL",
        b"EVALSHA_RO",
        b"EVAL_RO",
        b"FCALL_RO",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name));
    if scripted {
        let _script = args.next()??;
        let count: usize = std::str::from_utf8(args.next()??).ok()?.parse().ok()?;
        if count == 0 {
            return None;
        }
    }
    args.next()?.map(of_key)
}

/// CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster
/// slots are made of.
fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(of_key(b"foo"), 12182);
        assert_eq!(of_key(b"123456789"), 12739);
        assert_eq!(of_key(b"sc:{acme:orders}:stream"), of_key(b"acme:orders"));
        assert_eq!(of_key(b"a{}b"), of_key(b"a{}b"), "an empty tag is no tag");
        assert_ne!(of_key(b"a{}b"), of_key(b""));
    }

    #[test]
    fn the_first_key_of_a_command() {
        let mut script = redis::cmd("EVALSHA");
        script.arg("abc").arg(2).arg("sc:{t:p}:stream").arg("x");
        assert_eq!(of_command(&script), Some(of_key(b"t:p")));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0).arg("argv");
        assert_eq!(of_command(&keyless), None);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg("sc:{t:p}:wake").arg(0);
        assert_eq!(of_command(&publish), Some(of_key(b"t:p")));
        assert_eq!(of_command(&redis::cmd("PING")), None);
    }
}
