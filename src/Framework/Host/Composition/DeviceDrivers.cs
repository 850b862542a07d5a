using Vism.Driver;

namespace Vism.Host.Composition;

/// <summary>
/// The driver side of a running device (<c>vism demo</c>, <c>vism matrix</c>): the connector of its
/// transport kind, found in the transport's plugin assembly first (a third-party transport ships a
/// public <see cref="IDriverConnector"/>) and then among the built-in ones (vhost-user, mmio).
/// </summary>
public static class DeviceDrivers
{
    /// <summary>The connector for <paramref name="device"/>'s transport kind, or null when nothing can drive it.</summary>
    /// <param name="device">A started device.</param>
    /// <returns>The connector.</returns>
    public static IDriverConnector? FindConnector(this RunningDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        Plugins.PluginRegistration transport = device.Settings.Transport.Registration;
        return DriverConnectors.Find(transport.Name, transport.Implementation.Assembly);
    }

    /// <summary>What a connector needs to reach <paramref name="device"/>.</summary>
    /// <param name="device">A started device.</param>
    /// <returns>The target.</returns>
    public static DriverTarget DriverTarget(this RunningDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        return new DriverTarget
        {
            TransportKind = device.Settings.Transport.Registration.Name,
            Endpoint = device.Endpoint,
            Description = device.Settings.Description,
            VectorCount = device.Transport?.VectorCount ?? 0,
            Device = device.Device,
            Transport = device.Transport,
        };
    }

    /// <summary>Connects a new driver (VMM and guest driver) to <paramref name="device"/>.</summary>
    /// <param name="device">A started device.</param>
    /// <returns>The connection; the caller disposes it.</returns>
    /// <exception cref="InvalidOperationException">When no connector drives the device's transport kind.</exception>
    public static IDriverTransport ConnectDriver(this RunningDevice device)
    {
        IDriverConnector connector = device.FindConnector()
            ?? throw new InvalidOperationException($"no driver connector for transport '{device.Settings.Transport.Registration.Name}'");
        return connector.Connect(device.DriverTarget());
    }
}
