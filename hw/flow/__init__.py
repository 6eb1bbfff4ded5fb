"""The implementation flow of the gateware: yosys estimates per unit and per
board (:mod:`.synth`, :mod:`.board_flow`), the Vivado project and its Tcl
(:mod:`.vivado`), the build manifest and its design hash."""
