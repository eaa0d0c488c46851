import ArgumentParser
import KeyholdCore

/// The device agent. For now it only identifies itself; the daemon arrives with issue 4.
struct KeyholdAgent: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyhold-agent",
        abstract: "The Keyhold device agent (escrowed file and drive keys on a managed device).",
        version: KeyholdVersion.current
    )
}

KeyholdAgent.main()
