from vgfcli.cli import main

main()
