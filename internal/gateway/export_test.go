package gateway

// Pump is pump, for the package's external tests.
var Pump = pump
