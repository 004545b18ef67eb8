"""``python -m vcap.cli``: the ``vcap`` command."""
from vcap.cli import main

main()
