"""One module per tab. Each has `build(studio, ui)`: it lays out its components inside the open
gr.Tab, wires their events, and records the components other tabs need on `ui`."""
