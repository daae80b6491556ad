module kubelet-py.test/grpchealth

go 1.24
