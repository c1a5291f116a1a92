// Package repocheck holds tests about the repository as a whole, such as
// the import fences between the product's packages. It has no code of its
// own: run it with go test ./scripts/repocheck.
package repocheck
