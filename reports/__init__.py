"""Reports: a run directory turned into tables, PNG plots and one HTML page. Measures nothing."""
