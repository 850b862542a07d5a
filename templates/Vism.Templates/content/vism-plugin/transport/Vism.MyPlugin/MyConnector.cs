using Vism.Driver;

namespace Vism.MyPlugin;

/// <summary>
/// The driver side of the transport: what a VMM and its guest driver do to reach a device served by
/// <see cref="MyTransport"/>. `vism matrix` and `vism demo` find it in the plugin assembly (a public
/// class with a parameterless constructor) and connect one driver per call.
/// </summary>
/// <remarks>This skeleton connects in process through Vism.Driver's <see cref="InMemoryTransport"/>.
/// A real connector opens <see cref="DriverTarget.Endpoint"/>, speaks the transport's protocol as a
/// VMM, maps the REGIONS window into this process, and returns that connection as an
/// <see cref="IDriverTransport"/>. It is called from a test or matrix thread, never from a device's loop.</remarks>
public sealed class MyConnector : IDriverConnector
{
    /// <inheritdoc />
    public string TransportKind => MyPlugin.Kind;

    /// <inheritdoc />
    public IDriverTransport Connect(DriverTarget target)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (target.Transport is not MyTransport { Served: { } device })
            throw new DriverTransportException($"{target.Endpoint} is not served by a started {MyPlugin.Kind} transport in this process");
        return InMemoryTransport.StartFor(device, vectorCount: target.VectorCount);
    }
}
