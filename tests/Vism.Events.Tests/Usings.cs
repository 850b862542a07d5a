global using Vism.Abstractions;
global using Vism.Core;
global using Vism.Driver;
global using Vism.Events.Irq;
global using Vism.Events.Vq;
