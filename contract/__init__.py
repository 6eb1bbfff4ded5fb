"""The device contract: what the accelerator and its host agree on, in plain Python.

The register map (:mod:`.registers`), the build configurations (:mod:`.configs`),
the boards (:mod:`.boards`) and the transport interface a device is reached
through (:mod:`.transport`). The gateware, the simulation, the implementation
flow and the host all import this package; it imports nothing but the standard
library, so a PYNQ board (numpy and pynq, no amaranth, no cocotb) can.
"""
