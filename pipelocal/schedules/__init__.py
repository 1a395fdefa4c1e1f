"""What happens when: the sequential protocol now; pipeline streaming and E2E baselines later."""
