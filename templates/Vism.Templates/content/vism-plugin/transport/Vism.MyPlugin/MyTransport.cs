using Microsoft.Extensions.Logging;
using Vism.Abstractions;

namespace Vism.MyPlugin;

/// <summary>
/// The device side of the transport: how a driver or VMM reaches one device. One instance per
/// device, created by the host through dependency injection, started on the device's loop.
/// </summary>
/// <remarks>
/// This skeleton serves its device in process: <see cref="Start"/> only records the device, and
/// <see cref="MyConnector"/> connects a driver to it with Vism.Driver's <c>InMemoryTransport</c>,
/// which implements the <see cref="ITransportServices"/> a device needs (guest memory, queue and
/// per-region interrupts, mapping region blocks into the REGIONS window). A real transport binds
/// its endpoint in <see cref="Start"/> (watch the listening descriptor with
/// <see cref="IDeviceLoop.WatchReadable"/>), turns its wire protocol into
/// <see cref="IVirtioDevice"/> calls on the loop, and calls <see cref="IVirtioDevice.Connect"/> with
/// its own <see cref="ITransportServices"/> when a driver arrives.
/// Threading: every member is called on the device's loop; never block it.
/// </remarks>
/// <param name="options">This device's options (bound and validated).</param>
/// <param name="device">The device's layout.</param>
/// <param name="log">Logger.</param>
public sealed class MyTransport(MyOptions options, DeviceDescription device, ILogger<MyTransport> log) : ITransport
{
    private IVirtioDevice? _served;

    /// <inheritdoc />
    public string Endpoint => $"{MyPlugin.Kind}:{device.Name}";

    /// <inheritdoc />
    public int VectorCount => options.Vectors;

    /// <summary>The device served, once started.</summary>
    public IVirtioDevice? Served => _served;

    /// <inheritdoc />
    public void Start(IVirtioDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (_served is not null)
            throw new InvalidOperationException($"{Endpoint} already serves a device");
        _served = device;
        log.LogInformation("{Kind}: serving device {Device} at {Endpoint}", MyPlugin.Kind, device.Description.Name, Endpoint);
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        // Close the endpoint and every connection here; the device disconnects its driver itself.
        _served = null;
        return ValueTask.CompletedTask;
    }
}
