"""`python -m app.stack`: what `make run` execs."""

from app.stack.supervisor import main

main()
