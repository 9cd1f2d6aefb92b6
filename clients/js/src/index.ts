// The agent hub's client for browsers and Node: `new DashboardClient({url, getToken})`.
export { AgentClient, type AgentOptions, type CommandHandler } from "./agent.js";
export { Backoff, type BackoffOptions, type Action, type Decision, decideClose, decideStatus, parseRetryAfter } from "./backoff.js";
export { HubClient } from "./client.js";
export {
  resolveUrl, type ClientEvents, type ClientOptions, type ClientState, type CloseInfo, type HttpRefusal,
  type SocketConstructor, type SocketLike, type TokenProvider,
} from "./options.js";
export { DashboardClient, type CommandOptions, type Position, type SubscribeHandlers } from "./dashboard.js";
export {
  AgentOffline, CommandError, CommandExpired, ConnectionLost, Forbidden, HubError, HubTimeoutError, InvalidMessage, NotConnected,
  RateLimited, RefreshRefused, SessionTerminated, Unavailable, commandError,
} from "./errors.js";
export type * from "./messages.js";
export { SERVER_TYPES } from "./messages.js";
