"""lbcp's control plane: intent model, etcd store, watch-fed view, xDS server and hash rings."""
