from spmlbench.cli import main

main()
