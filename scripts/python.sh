# Sourced by setup.sh, demo.sh and test.sh: PY is the Python spinlora is installed in, the
# active virtual environment's, else ./.venv's (setup.sh creates it: PEP 668 refuses the system's).
if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; else PY=.venv/bin/python; fi
