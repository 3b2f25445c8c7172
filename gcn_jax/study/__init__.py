"""The paper's ablation studies (Tables 1-3 and 5) as one command, `study.py`: a named grid of config
variants (`grid`), each trained and evaluated per seed in its own sub-workdir (`runner`), and the tables, CSV,
JSON and plot built from the finished runs (`report`)."""
