from evilspectra.cli import main

main()
