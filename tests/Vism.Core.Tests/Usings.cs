global using Vism.Abstractions;
global using Vism.Driver;
