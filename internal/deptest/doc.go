// Package deptest holds tests of the module's shape; it has no code of its own.
package deptest
