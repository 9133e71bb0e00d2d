"""From a trained network to a compressed one, torch and numpy only: keep masks, the
compression plan and structured export, quantisation, the packed ``.pbcz`` codec and the
plain-torch export/loaders."""
