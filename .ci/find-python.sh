# Sourced by the CI scripts: find_python 3.8 -> the path of an interpreter that really is 3.8, from pyenv
# (`pyenv prefix X`) or pythonX.Y on PATH; returns 1 when there is none (the caller fails: a skipped Python is not a
# passed one).
find_python() {
    local v=$1 p pyenv=pyenv
    command -v pyenv >/dev/null 2>&1 || pyenv="${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv"  # not on a CI shell's PATH
    for p in "$("$pyenv" prefix "$v" 2>/dev/null | head -1)/bin/python$v" "$(command -v "python$v" 2>/dev/null)"; do
        [ -x "$p" ] && "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" \
            && { echo "$p"; return 0; }
    done
    return 1
}
