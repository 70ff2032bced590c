"""What people read about a study: report.json (`build`), its HTML page (`page`), every Plotly chart (`charts`), and a detector study's picture (`detections`)."""
