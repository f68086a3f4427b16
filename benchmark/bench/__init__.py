"""`gadbench bench`: the efficiency bench. config.py reads a bench file; process.py is what runs
inside one method's timing process; measure.py times calls; bursts.py interleaves them and
combines rounds; rounds.py runs the processes and writes one row per method."""
