"""What a run writes for people: tables, the report, the gate, the efficiency table, estimates."""
