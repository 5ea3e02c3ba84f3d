from sftkit.cli.app import main

main()
