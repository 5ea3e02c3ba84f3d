from sftkit.cli import main

main()
