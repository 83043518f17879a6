from mcpx_runtime.supervisor import main

main()
