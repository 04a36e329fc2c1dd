"""Pictures and graph files for people to read: heatmaps of routing statistics, routing graphs."""
