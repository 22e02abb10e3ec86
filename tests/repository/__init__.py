"""Your own functions: function folders read, scaffolded, served, changed while serving, shipped."""
