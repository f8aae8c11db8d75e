"""BIDS curation: metadata scrubbing, participants and subsets."""
