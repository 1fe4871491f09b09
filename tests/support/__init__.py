"""The tests' rigs, never shipped: the loopback S3 (``loopback_s3``) and Hub (``loopback_hub``) servers, a one-node
Ceph cluster (``ceph``), the S3 fault-injecting proxy (``fault_proxy``), the storage probe (``storage_probe``), the
report's browser driver (``browser``) and the wrappers that tests install from outside the product in the Snakemake
processes they start (``hooks``, through ``site/sitecustomize.py``).

Imported as ``support`` with ``tests/`` on ``sys.path``: pytest's ``pythonpath`` setting (pyproject.toml) for the
tests, a line at the top of each script in ``benchmarks/`` that uses them.
"""
