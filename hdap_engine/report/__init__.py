"""What people read about a study: report.json (`build`), its HTML page (`page`), and every Plotly chart (`charts`)."""
