"""A tiny MCP server over stdio for the host-loop tests (the official SDK): `add` and `fail`."""

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("calc", log_level="WARNING")


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Always fails.")
def fail(reason: str) -> str:
    raise ToolError(f"failed on purpose: {reason}")


if __name__ == "__main__":
    server.run("stdio")
