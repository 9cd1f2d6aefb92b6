// The errors of the client. Branch on the class (or on `code`), never on the text.

/** Base class of every error this package throws or rejects with. */
export class HubError extends Error {
  /** The hub's code string (`"agent_offline"`, `"kicked"`...), or the client's own (`"timeout"`). */
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * The hub refused or closed the session for good; the client stopped and will not reconnect.
 * A decision, not an accident: close 4403 (`kicked`, `token_revoked`, `role_forbidden`,
 * `identity_changed`, `origin_forbidden`...), an HTTP 403 where it can be read, or too many
 * handshakes refused with 4401 in a row. `closeCode` is the WebSocket close code (null for an HTTP
 * refusal), `status` the HTTP status (null for a close).
 */
export class SessionTerminated extends HubError {
  readonly closeCode: number | null;
  readonly status: number | null;

  constructor(code: string, closeCode: number | null, status: number | null = null) {
    const where = closeCode !== null ? `close ${closeCode}` : `HTTP ${status ?? "?"}`;
    super(code, `the hub ended the session (${where}): ${code || "no reason given"}`);
    this.closeCode = closeCode;
    this.status = status;
  }
}

/** The client has no open session right now (it is reconnecting, or it was closed). */
export class NotConnected extends HubError {
  constructor(message = "not connected to the hub (reconnecting or closed)") {
    super("not_connected", message);
  }
}

/**
 * The session closed while a request waited for its answer. The hub drops answers for closed
 * connections, so the outcome of a command is unknown.
 */
export class ConnectionLost extends HubError {
  constructor(message = "the session closed before the hub answered") {
    super("connection_lost", message);
  }
}

/** No answer within the `timeout` given to the call. */
export class HubTimeoutError extends HubError {
  constructor(message: string) {
    super("timeout", message);
  }
}

/** The hub answered a request with an `error` (see the subclasses; `code` is the hub's). */
export class CommandError extends HubError {}
/** `forbidden`: the token lacks the `operator` role. */
export class Forbidden extends CommandError {}
/** `agent_offline`: the agent is not connected (or belongs to another tenant). */
export class AgentOffline extends CommandError {}
/** `command_expired`: no result came within the hub's command TTL (none will come now). */
export class CommandExpired extends CommandError {}
/** `invalid_message`: a field has the wrong shape. */
export class InvalidMessage extends CommandError {}
/** `unavailable`: the hub's shared state is unreachable; retry later. */
export class Unavailable extends CommandError {}
/** `rate_limited`: this connection sends too fast. */
export class RateLimited extends CommandError {}
/** A token code (`token_expired`, `token_invalid`...): an `auth.refresh` was refused; the session
 * goes on under the old token until its expiry. */
export class RefreshRefused extends CommandError {}

const BY_CODE: Record<string, new (code: string, message: string) => CommandError> = {
  forbidden: Forbidden,
  agent_offline: AgentOffline,
  command_expired: CommandExpired,
  invalid_message: InvalidMessage,
  unavailable: Unavailable,
  rate_limited: RateLimited,
};

/** The error for an `error` answer with `code`. */
export function commandError(code: string, message: string): CommandError {
  const Kind = BY_CODE[code] ?? (code.startsWith("token_") || code === "claims_invalid" ? RefreshRefused : CommandError);
  return new Kind(code, message);
}
