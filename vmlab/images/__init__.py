"""What a VM's disk is made from: ISOs (fetched, verified), images built from packages, golden
images, warm states, and the cache that keeps them."""
