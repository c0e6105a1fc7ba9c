from lmzoo.cli import main

main()
