# Source on the GPU machine after setup.sh: sparsa from src/, the stand-in model package, the mini archives.
export PYTHONPATH=/tmp/site:$PWD/src SPARSA_ARCHIVES=$PWD/.devdata/archives SPARSA_CACHE=/tmp/cache PYTHONUNBUFFERED=1
