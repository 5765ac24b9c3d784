module example.com/vmlab/gomodule

go 1.19
