"""How a rank of the tests/mpi scripts hands its result to tests/test_distributed.py."""
import json
import os


def write_result(out: str, result: dict) -> None:
    """Write DIR/rank<r>.json whole or not at all: an MPI_Abort from another rank kills this
    process wherever it is, and a half-written file would read as a broken result."""
    path = os.path.join(out, f"rank{result['rank']}.json")
    with open(path + ".part", "w") as f:
        f.write(json.dumps(result))
    os.replace(path + ".part", path)
