"""
Benchmarks of txmasse against its physical limits and a peer system.

Run C{python -m bench} (C{--quick} for tiny sizes); see L{bench.run}.
"""
