//go:build tools

// Package tools records the commands this module builds, so go mod tidy keeps their dependencies.
package tools

// kube-controller-manager and kube-scheduler come from the same module, so that Deployments
// really roll out (ReplicaSets, Pods scheduled onto kwok's nodes) in the tests that need it.
import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
