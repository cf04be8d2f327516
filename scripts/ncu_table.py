"""Print an `ncu --csv` metrics dump as one row per kernel launch: python3 scripts/ncu_table.py ncu.csv"""
import csv
import sys
from collections import OrderedDict


def main(path):
    lines = open(path).read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        print(f"{path}: no ncu table in it")
        return
    launches = OrderedDict()
    for row in csv.DictReader(lines[start:]):
        launch = launches.setdefault(row["ID"], {"kernel": row["Kernel Name"][:60]})
        launch[row["Metric Name"]] = row["Metric Value"]
    names = sorted({k for launch in launches.values() for k in launch} - {"kernel"})
    print("id  kernel  " + "  ".join(names))
    for launch_id, launch in launches.items():
        print(launch_id, launch["kernel"], "  ".join(launch.get(n, "-") for n in names))


if __name__ == "__main__":
    main(sys.argv[1])
