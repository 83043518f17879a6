// Types of runtime.js, the module generated stubs import as "mcpx-runtime".

export class ToolError extends Error {
  readonly kind: string;
  readonly server: string;
  readonly tool: string;
  constructor(message: string, options?: { server?: string; tool?: string });
}
export class ToolNotAllowed extends ToolError {}
export class InvalidArguments extends ToolError {}
export class ToolTimeout extends ToolError {}
export class ServerUnavailable extends ToolError {}
export class QuotaExceeded extends ToolError {}
export class InvalidResult extends ToolError {}

export function callTool(server: string, tool: string, args: object): Promise<unknown>;
export function searchTools(
  query: string,
  detail?: "name" | "description" | "full",
  limit?: number,
): Promise<Array<Record<string, unknown>>>;
