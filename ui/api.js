// The page's only way to the server: the public /v1 API, with the bearer
// token (when the sidecar wants one) kept in this tab's session storage.
// Every failure becomes an ApiError carrying the problem+json document the
// server sent (status, code, detail), or a network error when the sidecar
// could not be reached at all.

const TOKEN_KEY = "streamcar.token";
/** Most time one call may take before the page gives up on it. */
const TIMEOUT_MS = 10000;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || (status === 0 ? "unreachable" : "http_" + status);
    this.title = problem.title || "";
    this.detail = problem.detail || "";
    this.retryAfter = problem.retryAfter || null;
  }
}

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode quota): the token lives until reload.
  }
}

/** Encodes one path segment (names are validated server-side anyway). */
export const seg = (s) => encodeURIComponent(s);

/** `/v1/tenants/<t>` + rest. */
export const tenantPath = (tenant, rest = "") => `/v1/tenants/${seg(tenant)}${rest}`;

/**
 * Calls the API: `call("GET", "/v1/tenants")`, `call("POST", path, body)`.
 * Resolves to the parsed JSON (null for an empty body); rejects with ApiError.
 */
export async function call(method, path, body) {
  const headers = { accept: "application/json" };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  const init = { method, headers, cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    const timedOut = e && e.name === "TimeoutError";
    throw new ApiError(0, {
      title: timedOut ? "No answer" : "Unreachable",
      detail: timedOut
        ? `the sidecar did not answer ${method} ${path} within ${TIMEOUT_MS / 1000} s`
        : "the sidecar could not be reached: is streamcar still running on this address?",
    });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 300) };
    }
  }
  if (!response.ok) {
    const problem = data && typeof data === "object" ? data : {};
    problem.retryAfter = response.headers.get("retry-after");
    throw new ApiError(response.status, problem);
  }
  return data;
}
