"""Demo MCP servers shipped with mcpx: a document store and a CRM over one fictional, seeded business.

`python -m controller.demo.docstore` and `python -m controller.demo.crm` serve them over stdio (add
`--transport streamable-http --port N` for HTTP). Everything is generated in memory at start from a fixed seed, so
two starts serve byte-identical data: the workload of the token benchmark and of `make run` out of the box.

Modules: `world` (the companies, people and deals both servers share), `transcripts` (meeting transcripts),
`documents` (reports and spreadsheets, the docstore's corpus), `docstore` and `crm` (the servers).
"""
