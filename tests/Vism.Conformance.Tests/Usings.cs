global using Microsoft.Extensions.Logging;
global using Microsoft.Extensions.Logging.Abstractions;
global using Vism.Abstractions;
global using Vism.Conformance;
global using Vism.Conformance.Composition;
global using Vism.Testing;
