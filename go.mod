module github.com/poprelay/poprelay

go 1.26
