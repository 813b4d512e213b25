"""MLPerf compliance checks (TEST06) over LoadGen logs."""
