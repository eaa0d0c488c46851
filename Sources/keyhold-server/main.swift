import KeyholdServerCommands

await KeyholdServerMain.run()
